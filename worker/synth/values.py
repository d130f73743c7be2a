"""Value generators for synthetic Indici extracts, per contract type and per known column meaning.

Everything here produces *text exactly as Indici writes it* (see ``/work/shared/indici/README.md``):

- datetimes ``2025-01-29 18:18:11.347`` (NZ local wall-clock time, SQL Server ``datetime`` precision, so
  milliseconds end in 0, 3 or 7), never inside a DST gap or overlap hour unless a fault asks for it;
- dates ``2025-02-11`` (some columns write ``2025-02-11 00:00:00.000``), ``1900-01-01`` for "no date";
- money ``18.50`` / ``.00``; doubles with 17 significant digits (``-36.882534999999997``);
- booleans ``0`` / ``1``; upper-case GUIDs; NHIs that pass the check-digit rule (Z-prefixed test range);
- codes with leading zeros (``0653``), phones ``+64...``, optional fields often empty.

Speed matters (a million appointment rows in seconds), so generation is *column-wise*: every generator
takes a :class:`Ctx` describing ``n`` rows and returns a list of ``n`` strings.  Most columns pick from a
256-entry pool with one random byte per value (``rng.randbytes``), which is an order of magnitude faster
than ``rng.choice`` per value.  Timestamps come from precomputed day and time-of-day string tables.

No module-level random state: every function takes a ``random.Random``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from random import Random
from typing import Callable, Sequence

from contracts.model import ColumnSpec, ExtractSpec, PiiClass
from contracts.types import NO_DATE_SENTINEL, ContractType
from worker.pipeline.identity import nhi_is_valid  # the one NHI rule; the generator only builds NHIs

# ---------------------------------------------------------------------------------------------------
# NHI
# ---------------------------------------------------------------------------------------------------

NHI_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, no O; A=1 ... Z=24
_NHI_VALUE = {ch: i + 1 for i, ch in enumerate(NHI_ALPHABET)}
_NHI_VALUE.update({str(d): d for d in range(10)})


def _nhi_sum(s: str) -> int:
    return sum(_NHI_VALUE[s[i]] * (7 - i) for i in range(6))


def _nhi_check_old(prefix6: str) -> str | None:
    r = _nhi_sum(prefix6) % 11
    if r == 0:
        return None
    return str((11 - r) % 10)


def _nhi_check_new(prefix6: str) -> str:
    return NHI_ALPHABET[23 - (_nhi_sum(prefix6) % 23) - 1]


def make_nhi(rng: Random, *, test_range: bool = True, new_format: bool | None = None) -> str:
    """One valid NHI; Z-prefixed (reserved for testing) unless ``test_range`` is False."""
    A = NHI_ALPHABET
    while True:
        first = "Z" if test_range else A[rng.randrange(24)]
        head = first + A[rng.randrange(24)] + A[rng.randrange(24)]
        use_new = rng.random() < 0.4 if new_format is None else new_format
        if use_new:
            prefix = head + f"{rng.randrange(100):02d}" + A[rng.randrange(24)]
            return prefix + _nhi_check_new(prefix)
        prefix = head + f"{rng.randrange(1000):03d}"
        check = _nhi_check_old(prefix)
        if check is not None:
            return prefix + check


def make_invalid_nhi(rng: Random) -> str:
    """A Z-prefixed NHI-shaped string whose check character is wrong (or whose old-format sum is 0 mod 11)."""
    good = make_nhi(rng)
    last = good[6]
    if last.isdigit():
        choices = [d for d in "0123456789" if d != last]
    else:
        choices = [c for c in NHI_ALPHABET if c != last]
    bad = good[:6] + rng.choice(choices)
    assert not nhi_is_valid(bad)
    return bad


def unique_nhis(rng: Random, n: int, taken: set[str] | None = None) -> list[str]:
    """``n`` distinct valid Z-prefixed NHIs not in ``taken`` (which is updated)."""
    taken = set() if taken is None else taken
    out: list[str] = []
    while len(out) < n:
        v = make_nhi(rng)
        if v not in taken:
            taken.add(v)
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------------
# Time tables (NZ local wall-clock, as integer seconds since BASE_DATE 00:00)
# ---------------------------------------------------------------------------------------------------

BASE_DATE = date(1900, 1, 1)
_LAST_DATE = date(2045, 12, 31)
DAY = 86400


@lru_cache(maxsize=1)
def day_strings() -> list[str]:
    """``day_strings()[d]`` is the ISO date of BASE_DATE + d days."""
    n = (_LAST_DATE - BASE_DATE).days + 1
    return [(BASE_DATE + timedelta(days=i)).isoformat() for i in range(n)]


@lru_cache(maxsize=1)
def hms_strings() -> list[str]:
    """``hms_strings()[t]`` is ``HH:MM:SS`` for second-of-day t."""
    return [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]


#: SQL Server datetime keeps 1/300 s: milliseconds end in 0, 3 or 7. 256 entries for byte indexing.
MS_POOL: list[str] = [f".{round(i * 10 / 3) % 1000:03d}" for i in range(256)]


@lru_cache(maxsize=1)
def dst_days() -> frozenset[int]:
    """Day indices (since BASE_DATE) on which Pacific/Auckland changes offset (02:00-03:00 is a gap or overlap)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Pacific/Auckland")
    days = set()
    d = date(1974, 1, 1)
    while d <= _LAST_DATE:
        # transitions happen on Sundays in Mar/Apr/Sep/Oct (since 1974)
        if d.weekday() == 6 and d.month in (3, 4, 9, 10):
            a = datetime(d.year, d.month, d.day, 1, 0, tzinfo=tz).utcoffset()
            b = datetime(d.year, d.month, d.day, 4, 0, tzinfo=tz).utcoffset()
            if a != b:
                days.add((d - BASE_DATE).days)
        d += timedelta(days=1)
    return frozenset(days)


def dst_transition_dates(year: int) -> tuple[date, date]:
    """(fall-back date with the repeated hour, spring-forward date with the skipped hour) of ``year``."""
    back = fwd = None
    for d in sorted(dst_days()):
        day = BASE_DATE + timedelta(days=d)
        if day.year == year:
            if day.month <= 6:
                back = day
            else:
                fwd = day
    if back is None or fwd is None:
        raise ValueError(f"no DST transitions known for {year}")
    return back, fwd


def to_secs(dt: datetime | date) -> int:
    """Seconds since BASE_DATE 00:00 (naive, NZ local)."""
    if isinstance(dt, datetime):
        delta = dt - datetime(BASE_DATE.year, BASE_DATE.month, BASE_DATE.day)
        return delta.days * DAY + delta.seconds
    return (dt - BASE_DATE).days * DAY


def from_secs(s: int) -> datetime:
    return datetime(BASE_DATE.year, BASE_DATE.month, BASE_DATE.day) + timedelta(seconds=s)


def fix_dst(s: int) -> int:
    """Move a local time out of the 02:00-03:00 hour of a DST transition day (to 03:xx)."""
    return s + 3600 if s // 3600 in dst_hours() else s


def fmt_ts(s: int, ms: str = ".000") -> str:
    d, t = divmod(s, DAY)
    return f"{day_strings()[d]} {hms_strings()[t]}{ms}"


def fmt_date(s: int) -> str:
    return day_strings()[s // DAY]


@lru_cache(maxsize=1)
def dst_hours() -> frozenset[int]:
    """Hour indices (seconds // 3600) of the 02:00-03:00 hour of every DST transition day."""
    return frozenset(d * 24 + 2 for d in dst_days())


def ts_vec(rng: Random, secs: Sequence[int], *, zero_ms: bool = False) -> list[str]:
    """Format seconds as Indici datetimes, moving DST-gap/overlap times forward by an hour."""
    D = day_strings()
    H = hms_strings()
    bad = dst_hours()
    secs = [s + 3600 if s // 3600 in bad else s for s in secs]
    if zero_ms:
        return [f"{D[s // 86400]} {H[s % 86400]}.000" for s in secs]
    M = MS_POOL
    return [f"{D[s // 86400]} {H[s % 86400]}{M[b]}" for s, b in zip(secs, rng.randbytes(len(secs)))]


def date_vec(secs: Sequence[int], *, midnight: bool = False) -> list[str]:
    D = day_strings()
    if midnight:
        return [D[s // DAY] + " 00:00:00.000" for s in secs]
    return [D[s // DAY] for s in secs]


def uniform_secs(rng: Random, n: int, lo: int, hi: int) -> list[int]:
    """n uniform integers in [lo, hi]."""
    span = max(hi - lo, 0) + 1
    r = rng.random
    return [lo + int(r() * span) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------------


def fmt_money(cents: int) -> str:
    """SQL Server money as Indici writes it: ``18.50``, ``.00``, ``-3.20``."""
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    whole, frac = divmod(cents, 100)
    return f"{sign}{whole if whole else ''}.{frac:02d}"


def fmt_double(x: float) -> str:
    """A float with 17 significant digits (``-36.882534999999997``)."""
    return format(x, ".17g")


def fmt_uuid(bits: int) -> str:
    h = f"{bits:032X}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pool256(values: Sequence[str], empty: float = 0.0, weights: Sequence[float] | None = None) -> list[str]:
    """A 256-entry lookup list holding ``values`` (weighted) and a share ``empty`` of empty strings."""
    if not values:
        return [""] * 256
    n_empty = round(256 * empty)
    rest = 256 - n_empty
    if weights is None:
        weights = [1.0] * len(values)
    total = float(sum(weights))
    counts = [max(1, round(rest * w / total)) for w in weights]
    pool: list[str] = []
    for v, c in zip(values, counts):
        pool.extend([v] * c)
    # cycle or trim to exactly `rest` entries (keeps every value at least once when possible)
    if len(pool) > rest:
        step = len(pool) / rest
        pool = [pool[int(i * step)] for i in range(rest)]
    i = 0
    base = list(pool) or list(values)
    while len(pool) < rest:
        pool.append(base[i % len(base)])
        i += 1
    return pool + [""] * n_empty


def pick(rng: Random, pool: list[str], n: int) -> list[str]:
    """n values from a 256-entry pool, one random byte each."""
    return list(map(pool.__getitem__, rng.randbytes(n)))


def pick_any(rng: Random, values: Sequence[str], n: int) -> list[str]:
    """n values from a list of any length."""
    m = len(values)
    r = rng.random
    return [values[int(r() * m)] for _ in range(n)]


def masked(rng: Random, n: int, empty: float, make: Callable[[int], list[str]], blank: str = "") -> list[str]:
    """A vector where a share ``empty`` of positions is ``blank`` and the rest come from ``make(k)``."""
    if empty <= 0:
        return make(n)
    if empty >= 1:
        return [blank] * n
    t = round(empty * 256)
    mask = rng.randbytes(n)
    k = sum(1 for b in mask if b >= t)
    it = iter(make(k))
    return [next(it) if b >= t else blank for b in mask]


def masked_at(rng: Random, n: int, empty: float, make: Callable[[list[int]], list[str]]) -> list[str]:
    """Like :func:`masked`, but ``make`` gets the row indices that need a value (to use per-row anchors)."""
    if empty <= 0:
        return make(list(range(n)))
    t = round(empty * 256)
    mask = rng.randbytes(n)
    idx = [i for i, b in enumerate(mask) if b >= t]
    out = [""] * n
    for i, v in zip(idx, make(idx)):
        out[i] = v
    return out


# ---------------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------------

FIRST_F = ["Aroha", "Mere", "Ana", "Sue", "Hine", "Kiri", "Emma", "Olivia", "Charlotte", "Amelia", "Isla",
           "Sophie", "Grace", "Mia", "Ruby", "Ella", "Zoe", "Harper", "Aria", "Moana", "Mele", "Losa", "Priya",
           "Mei", "Fatima", "Renee", "Claire", "Summer", "Teena", "Anahera", "Ngaio", "Kahurangi", "Siosaia",
           "Leilani", "Jasmine", "Hannah", "Chloe", "Maia", "Frankie", "Rangi"]
FIRST_M = ["Wiremu", "Tane", "Nikau", "Rawiri", "Oliver", "Jack", "Noah", "Leo", "George", "Charlie", "Hunter",
           "Mason", "Tama", "Sione", "Viliami", "Raj", "Wei", "Ahmed", "Liam", "James", "Lucas", "Ari", "Hemi",
           "Manaia", "Kauri", "Te Ariki", "Tomasi", "Arjun", "Jun", "Daniel", "Samuel", "Henare", "Mikaere",
           "Isaac", "Thomas", "William", "Ethan", "Kaleb", "Ruben", "Mickey"]
FAMILY = ["SMITH", "WILLIAMS", "BROWN", "WILSON", "TAYLOR", "JONES", "NGATA", "TE MANA", "QUINN", "MCGEE",
          "BAKER", "PARATA", "HORI", "TUHIWAI", "FALEOLO", "TUPOU", "SINGH", "PATEL", "WANG", "LI", "KIM", "CHEN",
          "O'BRIEN", "MACDONALD", "WALKER", "ANDERSON", "THOMPSON", "HARRIS", "KING", "WHAANGA", "TAMIHANA",
          "RANGI", "POTAKA", "TE WHATA", "FONOTI", "LEAUPEPE", "NGUYEN", "SHARMA", "MOUSE", "VAN DER BERG",
          "ROBINSON", "CAMPBELL", "STEWART", "MORGAN", "EDWARDS", "TE HIRA", "PAEWAI", "HIKUROA"]
TITLES_F = ["Mrs", "Ms", "Miss", "Dr"]
TITLES_M = ["Mr", "Mr", "Mr", "Dr", "Master"]
STREETS = ["Waikite Road", "Beach Road", "Main Street", "Cameron Road", "Devonport Road", "Fraser Street",
           "Queen Street", "Te Puke Highway", "Maunganui Road", "Ngatai Road", "Oceanbeach Road", "Welcome Bay Road",
           "Pāpāmoa Beach Road", "Jellicoe Street", "Chadwick Road", "Windermere Drive", "Grey Street",
           "Harbour Drive", "Kahikatea Drive", "Te Okuroa Drive"]
# (suburb, city, postcode) -- postcodes keep leading zeros
PLACES = [("Welcome Bay", "Tauranga", "3112"), ("Beachlands", "Auckland", "2147"), ("Te Puke", "Te Puke", "3119"),
          ("Mount Maunganui", "Tauranga", "3116"), ("Pāpāmoa", "Tauranga", "3118"), ("Greerton", "Tauranga", "3112"),
          ("Whakatāne", "Whakatāne", "3120"), ("Devonport", "Auckland", "0624"), ("Takapuna", "Auckland", "0622"),
          ("Katikati", "Katikati", "3129"), ("Ōpōtiki", "Ōpōtiki", "3122"), ("Rotorua Central", "Rotorua", "3010"),
          ("Ōtūmoetai", "Tauranga", "3110"), ("Bethlehem", "Tauranga", "3110"), ("Ōmokoroa", "Tauranga", "3114"),
          ("Waihi Beach", "Waihi Beach", "3611"), ("Birkenhead", "Auckland", "0626"), ("Albany", "Auckland", "0632")]
PRACTICE_NAMES = ["Poutiri Wellness Centre", "Te Puke Medical Centre", "Katikati Health Hub", "Pāpāmoa Family Doctors",
                  "Welcome Bay Health", "Ōtūmoetai Medical", "Mount Maunganui GP Clinic", "Bethlehem Health Centre"]
LOCATION_SUFFIXES = ["Main Clinic", "Satellite Clinic", "Mobile Clinic"]
EMAIL_DOMAINS = ["hotmail.com", "gmail.com", "xtra.co.nz", "outlook.com", "yahoo.co.nz", "icloud.com"]
COUNTRIES = ["New Zealand", "New Zealand", "New Zealand", "New Zealand", "Australia", "Samoa", "Tonga", "India",
             "China", "United Kingdom", "Fiji", "Philippines"]
ETHNICITIES = [("11", "New Zealand European"), ("21", "Maori - NZ"), ("31", "Samoan"), ("33", "Tongan"),
               ("43", "Indian"), ("42", "Chinese"), ("12", "Other European"), ("32", "Cook Island Maori"),
               ("61", "Other"), ("99", "Not stated"), ("36", "Fijian"), ("51", "Middle Eastern")]
NOTES = ["Patient reports mild headache, advised fluids and rest.", "Follow-up in 2 weeks.",
         "BP 128/82, repeat in 3 months.", "Reviewed bloods, all within normal limits.",
         "Flu vaccine given, no reaction observed.", "Discussed smoking cessation; Quitline referral sent.",
         "Phoned, left message.", "Repeat Rx, 3 months.", "Results to be discussed at next visit.",
         "Wound dressing changed; healing well.", "Whānau present for consult.", "Referred to physio.",
         "Script faxed to pharmacy", "Declined, will reconsider", "Recall sent by text",
         "Cough 5/7, chest clear, viral URTI", "Annual review – diabetes", "ACC claim lodged",
         "Ngā mihi, see notes from 12/03", "Pt requests female GP"]
MEDICINES = ["Paracetamol 500mg tablet", "Ibuprofen 200mg tablet", "Amoxicillin 500mg capsule",
             "Metformin 500mg tablet", "Atorvastatin 20mg tablet", "Cilazapril 2.5mg tablet", "Salbutamol inhaler 100mcg",
             "Omeprazole 20mg capsule", "Levothyroxine 50mcg tablet", "Amlodipine 5mg tablet",
             "Cetirizine 10mg tablet", "Prednisone 5mg tablet", "Metoprolol succinate 47.5mg tablet",
             "Aspirin 100mg tablet", "Fluticasone nasal spray", "Doxycycline 100mg capsule", "Sertraline 50mg tablet",
             "Citalopram 20mg tablet", "Losartan 50mg tablet", "Vitamin D 1.25mg capsule", "Codeine 30mg tablet",
             "Flucloxacillin 500mg capsule", "Insulin glargine 100u/ml", "Allopurinol 300mg tablet",
             "Diclofenac 75mg tablet", "Empagliflozin 10mg tablet", "Budesonide with eformoterol inhaler",
             "Loratadine 10mg tablet", "Ventolin", "Nicotine patch 21mg"]
VACCINES = [("BCG", "BCG vaccine"), ("INFLU", "Influenza vaccine"), ("HEPB", "Hepatitis B vaccine"),
            ("MMR", "Measles Mumps Rubella vaccine"), ("DTAPIPV", "DTaP-IPV vaccine"), ("HPV", "Gardasil 9"),
            ("PCV", "Pneumococcal conjugate vaccine"), ("ROTA", "Rotavirus vaccine"), ("VZV", "Varicella vaccine"),
            ("ZOST", "Shingrix"), ("TDAP", "Boostrix"), ("COVID", "Comirnaty"), ("MENB", "Bexsero"),
            ("HIB", "Haemophilus influenzae type b vaccine")]
DISEASES = ["Type 2 diabetes mellitus", "Essential hypertension", "Asthma", "Gout", "Depression", "Anxiety",
            "Upper respiratory tract infection", "Otitis media", "Eczema", "Hyperlipidaemia", "COPD",
            "Chronic kidney disease", "Atrial fibrillation", "Osteoarthritis knee", "Cellulitis", "Rheumatic fever"]

#: Coded-value vocabularies, keyed by domain name or column name. ``domain_values()`` is the public lookup.
VOCAB: dict[str, list[str]] = {
    "appointment_status": ["Booked", "Arrived", "Completed", "Cancelled", "Did Not Attend", "In Consultation",
                           "Waiting for Payment", "Not Arrived"],
    "status_group": ["Booked", "Arrived", "Completed", "Cancelled", "DNA"],
    "immunisation_status": ["Given", "Declined", "Not Given", "Deferred", "Given Elsewhere"],
    "gender": ["Female", "Male", "Unknown", "Another Gender"],
    "sex_related_gender": ["Female", "Male", "Unknown", "Another Gender"],
    "enrolment_status": ["Enrolled", "Not Enrolled", "Enrolled Elsewhere", "Registered", "Casual"],
    "register_status": ["Registered (R)", "Visitor (V)", "Casual (C)", "Inactive (I)"],
    "funding_status": ["Funded", "Not Funded", "Pending"],
    "nhi_status": ["Is Validated", "Is Synchronized", "Not Validated"],
    "age_type": ["Year(s)", "Month(s)", "Day(s)"],
    "age_group": ["00-04", "05-14", "15-24", "25-44", "45-64", "65+"],
    "marital_status": ["Single", "Married", "De Facto", "Divorced", "Widowed", "Unknown"],
    "appointment_type": ["Standard Consult", "Long Consult", "Nurse Appointment", "Phone Consult",
                         "Video Consult", "Immunisation", "Cervical Screening"],
    "booking_source": ["Reception", "Patient Portal", "Phone", "Walk-in", "Online Booking"],
    "appointment_out_come": ["Seen", "Not Seen", "Referred", "Follow-up Booked"],
    "payment_mode": ["EFTPOS", "Cash", "Credit Card", "Internet Banking", "Account"],
    "transaction_type": ["Invoice", "Payment", "Credit Note", "Refund"],
    "severity": ["Mild", "Moderate", "Severe", "Unknown"],
    "allergy_type": ["Drug", "Food", "Environmental", "Other"],
    "reaction_type": ["Allergy", "Intolerance", "Side Effect"],
    "route": ["Oral", "Intramuscular", "Subcutaneous", "Topical", "Inhaled", "Intranasal"],
    "administration_site": ["Left Deltoid", "Right Deltoid", "Left Thigh", "Right Thigh", "Oral"],
    "vaccine_out_come": ["Given", "Refused", "Reaction", "No Reaction"],
    "relationship_type": ["Mother", "Father", "Partner", "Son", "Daughter", "Sibling", "Friend", "Guardian"],
    "diagnosis_type": ["Clinical", "Provisional", "Historical"],
    "item_type": ["Lab Result", "Letter", "Radiology", "Discharge Summary", "eReferral"],
    "folder_name": ["Inbox", "Results", "Letters", "Filed"],
    "screening_type": ["Blood Pressure", "HbA1c", "BMI", "Cervical Smear", "Smoking Status", "Cardiovascular Risk"],
    "screening_group": ["Cardiovascular", "Diabetes", "Women's Health", "Lifestyle"],
    "outcome": ["Normal", "Abnormal", "Declined", "Not Due"],
    "duration_type": ["Day(s)", "Week(s)", "Month(s)"],
    "rx_status": ["Printed", "Sent Electronically", "Cancelled", "Pending"],
    "sa_status": ["Not Required", "Approved", "Pending"],
    "submission_status": ["Submitted", "Accepted", "Rejected", "Not Submitted"],
    "alert_state": ["Active", "Inactive", "Expired"],
    "type": ["Medical", "Administrative", "Clinical Warning"],
    "patient_type": ["Patient", "Casual Patient", "Visitor"],
    "portal_registration_status": ["Registered ", "Not Registered", "Invited", "N/A"],
    "enrolment_type": ["Capitated", "Casual", "Visitor"],
    "care_plus_linc_status": ["Not Processed", "Enrolled", "Eligible"],
    "breast_screen": ["Not Due", "Due", "Overdue"],
    "smoking_type": ["Never Smoked", "Ex Smoker", "Current Smoker"],
    "preferred_contact_method": ["Text", "Email", "Phone", "Letter"],
    "residential_status": ["NZ Citizen", "Permanent Resident", "Work Visa", "Unknown"],
    "dob_source": ["Birth Certificate", "Passport", "Migrated", "Self Declared"],
    "nes_status": ["Not Processed", "Processed"],
    "user_role": ["GP", "Nurse", "Receptionist", "Practice Manager", "Nurse Practitioner"],
    "affiliation": ["PHO", "DHB", "Private"],
    "practice_category": ["General Practice", "Urgent Care"],
    "organization_type": ["Practice", "PHO"],
    "legal_status": ["Company", "Partnership", "Trust"],
    "ownership_model": ["Owner Operated", "Corporate", "Community Owned"],
    "medicine_type": ["Prescription", "OTC", "Controlled"],
    "coding_system": ["NIR", "Indici", "SNOMED"],
    "warning_type": ["Warning", "Alert", "Information"],
    "care_plane_name": ["CarePlus", "Long Term Conditions", "Diabetes Annual Review"],
    "informat": ["HL7", "PDF", "Text"],
    # the contracts' domain names
    "appointment_status_group": ["Booked", "Arrived", "Completed", "Cancelled", "DNA"],
    "appointment_outcome": ["Seen", "Not Seen", "Referred", "Follow-up Booked"],
    "allergy_severity": ["Mild", "Moderate", "Severe", "Unknown"],
    "alert_severity": ["Low", "Medium", "High"],
    "alert_type": ["Medical", "Administrative", "Clinical Warning", "Safety"],
    "vaccine_outcome": ["Given", "Refused", "Reaction", "No Reaction"],
    "inbox_item_type": ["Lab Result", "Letter", "Radiology", "Discharge Summary", "eReferral"],
    "claim_submission_status": ["Submitted", "Accepted", "Rejected", "Not Submitted"],
    "invoice_transaction_type": ["Invoice", "Payment", "Credit Note", "Refund"],
    # ethnicity level 2 codes (README)
    "ethnicity_code": ["10", "11", "12", "21", "30", "31", "32", "33", "34", "35", "36", "37", "40", "41", "42",
                       "43", "44", "51", "52", "53", "61", "94", "95", "97", "99"],
}

_FALLBACK_DOMAIN = ["Active", "Inactive", "Pending", "Closed", "Other"]


def domain_values(domain: str | None, column: str | None = None) -> list[str]:
    """The fixed vocabulary the generator uses for a coded column (by domain name, then by column name)."""
    for key in (domain, column):
        if key and key in VOCAB:
            return list(VOCAB[key])
    for key in (domain, column):  # close matches: enrolment_status_desc -> enrolment_status
        if key:
            for name, values in VOCAB.items():
                if key.startswith(name) or key.endswith(name):
                    return list(values)
    return list(_FALLBACK_DOMAIN)


#: Values that are NOT in any generated vocabulary (for the unknown_domain_value fault).
UNKNOWN_DOMAIN_VALUES = ["Zz Unmapped Status", "NEW-CODE-77", "Pending Review (legacy)", "??"]


# ---------------------------------------------------------------------------------------------------
# Practices
# ---------------------------------------------------------------------------------------------------


@dataclass
class PracticeInfo:
    """One practice of one provider organisation, with its display data (mutable: names may change)."""

    per_org_id: int
    practice_id: int
    name: str
    locations: list[tuple[str, str]] = field(default_factory=list)  # (location id, location name)

    @property
    def key(self) -> tuple[int, int]:
        return (self.per_org_id, self.practice_id)


def make_practice(per_org_id: int, practice_id: int, index: int) -> PracticeInfo:
    name = PRACTICE_NAMES[index % len(PRACTICE_NAMES)]
    if index >= len(PRACTICE_NAMES):
        name = f"{name} {index // len(PRACTICE_NAMES) + 1}"
    n_loc = 1 + (practice_id % 3)
    locs = [(str(practice_id * 10 + i + 1), f"{name} - {LOCATION_SUFFIXES[i]}") for i in range(n_loc)]
    return PracticeInfo(per_org_id, practice_id, name, locs)


# ---------------------------------------------------------------------------------------------------
# The per-chunk context handed to column generators
# ---------------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """Everything column generators may use to produce ``n`` rows of one extract for one practice.

    ``anchor[i]`` is row i's main event time (seconds since BASE_DATE, NZ local): the fact's main date,
    or the dimension row's creation time. ``ins[i]`` its InsertedAt. ``upd_lo``/``hi`` bound UpdatedAt
    (``hi`` is the batch's DateTo: nothing in a file is updated after its window). ``fixed`` overrides
    whole columns (ids, references, coherent person data, ...).
    """

    rng: Random
    n: int
    practice: PracticeInfo
    anchor: list[int]
    ins: list[int]
    upd_lo: int
    hi: int
    loaded: str
    fixed: dict[str, list[str]] = field(default_factory=dict)
    staff: list[str] = field(default_factory=lambda: ["Default PROVIDER"])
    loc: list[int] | None = None  # index into practice.locations per row

    def locations(self) -> list[int]:
        if self.loc is None:
            m = len(self.practice.locations) or 1
            self.loc = [b % m for b in self.rng.randbytes(self.n)]
        return self.loc


Gen = Callable[[Ctx], list[str]]


# ---------------------------------------------------------------------------------------------------
# Column classification helpers
# ---------------------------------------------------------------------------------------------------


def stable_hash(name: str) -> int:
    """A hash of a name that is the same in every process (unlike hash())."""
    return zlib.crc32(name.encode())


def midnight_style(column: str) -> bool:
    """Some date columns are written as ``2025-07-21 00:00:00.000`` (stable per column name)."""
    return stable_hash(column) % 7 == 0


def _has(name: str, *parts: str) -> bool:
    return any(p in name for p in parts)


BOOL_MOSTLY_0 = ("is_deleted", "rowinactive", "is_confidential", "is_dummy", "is_test", "is_parked",
                 "is_deactivated", "is_consult_parked", "is_stopped", "is_canceled", "is_pregnant",
                 "is_premature", "is_trial", "is_override", "is_deleted_2")
BOOL_MOSTLY_1 = ("is_active", "is_alive", "is_reviewed", "consent", "include_in_print", "apply_charges")

_PERSON_NAME_COLUMNS = {
    "inserted_by", "updated_by", "insertedby", "logging_user_name", "printed_by", "stopped_by", "mapped_by",
    "assign_to", "enrolment_verifier", "vaccinator", "diagnosis_by", "income_provider", "provider",
    "provider_name", "default_gp_name", "specalist_name", "account_holder", "emergency_contact_name",
    "secondary_contact_name", "apc_name", "name",
}


def is_free_text(col: ColumnSpec) -> bool:
    return col.pii is PiiClass.FREE_TEXT or _has(
        col.column, "notes", "comment", "description", "summary", "remarks", "reason", "directions", "note",
        "message_subject")


def is_nhi_column(col: ColumnSpec) -> bool:
    return col.pii is PiiClass.NHI or col.column in ("nhi_number", "nhi")


# ---------------------------------------------------------------------------------------------------
# Generators by type
# ---------------------------------------------------------------------------------------------------


def _empty_share(col: ColumnSpec, default: float) -> float:
    return 0.0 if col.required else default


def _const(value: str) -> Gen:
    return lambda ctx: [value] * ctx.n


def _gen_boolean(col: ColumnSpec) -> Gen:
    name = col.column
    if any(k in name for k in BOOL_MOSTLY_0):
        p1 = 0.03
    elif any(k in name for k in BOOL_MOSTLY_1):
        p1 = 0.95
    else:
        p1 = 0.3
    empty = _empty_share(col, 0.03)
    pool = pool256(["1", "0"], empty=empty, weights=[p1, 1 - p1])
    return lambda ctx: pick(ctx.rng, pool, ctx.n)


def _gen_uuid(col: ColumnSpec) -> Gen:
    empty = _empty_share(col, 0.1)

    def gen(ctx: Ctx) -> list[str]:
        g = ctx.rng.getrandbits
        return masked(ctx.rng, ctx.n, empty, lambda k: [fmt_uuid(g(128)) for _ in range(k)])

    return gen


def _gen_double(col: ColumnSpec) -> Gen:
    name = col.column
    empty = _empty_share(col, 0.15)
    if "latitude" in name:
        lo, hi = -46.6, -34.5
    elif "longitude" in name:
        lo, hi = 166.5, 178.5
    else:
        lo, hi = 0.0, 250.0

    def gen(ctx: Ctx) -> list[str]:
        r = ctx.rng.random
        span = hi - lo
        # round to 6 decimals like a geocoder, then print 17 significant digits as SQL Server float does
        return masked(ctx.rng, ctx.n, empty, lambda k: [format(round(lo + r() * span, 6), ".17g") for _ in range(k)])

    return gen


def _gen_money(col: ColumnSpec) -> Gen:
    name = col.column
    empty = _empty_share(col, 0.1)
    if _has(name, "balance", "unpaid"):
        cents = [0] * 10 + [1850, 4500, -2000, 350, 12000]
    elif _has(name, "subsidy", "co_payment", "claim"):
        cents = [0, 500, 1250, 1850, 2650, 3900, 4320, 7550]
    else:
        cents = [0, 500, 1000, 1850, 2500, 3500, 4500, 5250, 6500, 8000, 12000, 19900, 250, 99]
    pool = pool256([fmt_money(c) for c in cents], empty=empty)
    return lambda ctx: pick(ctx.rng, pool, ctx.n)


def _gen_numeric(col: ColumnSpec) -> Gen:
    empty = _empty_share(col, 0.2)
    values = ["1", "2", "0.5", "1.5", "10", "28", "30", "56", "90", "100", "2.25", "0", "12.75", "60"]
    pool = pool256(values, empty=empty)
    return lambda ctx: pick(ctx.rng, pool, ctx.n)


def _int_values(name: str) -> list[str]:
    if name == "age":
        return [str(i) for i in range(0, 96)]
    if _has(name, "duration", "consult_time"):
        return ["5", "10", "15", "15", "15", "20", "30", "45", "60"]
    if _has(name, "sequence", "line_number", "order_no", "dose_number", "repeats", "attempts", "quantity",
            "period", "quarter", "quintile", "decile", "score", "priority", "dailyfreq"):
        return [str(i) for i in range(0, 11)]
    if name.endswith("_id") or name.endswith("id"):
        return [str(i) for i in range(1, 40)]
    return [str(i) for i in range(0, 500, 3)]


def _gen_integer(col: ColumnSpec, bigint: bool) -> Gen:
    name = col.column
    empty = _empty_share(col, 0.25)
    if bigint and _has(name, "med_tech_id", "medtech", "user_logging_id", "dmsid", "external"):
        def gen(ctx: Ctx) -> list[str]:
            r = ctx.rng.random
            return masked(ctx.rng, ctx.n, max(empty, 0.5), lambda k: [str(100000 + int(r() * 9_000_000)) for _ in range(k)])
        return gen
    if col.domain:
        values = [str(i) for i in range(1, len(domain_values(col.domain, name)) + 1)]
    else:
        values = _int_values(name)
    pool = pool256(values, empty=empty)
    return lambda ctx: pick(ctx.rng, pool, ctx.n)


def _gen_timestamp(col: ColumnSpec, main: bool) -> Gen:
    name = col.column
    if main:
        zero = _has(name, "schedule")

        def gen_main(ctx: Ctx) -> list[str]:
            if zero:  # appointment slots start on a 5-minute boundary
                return ts_vec(ctx.rng, [a - a % 300 for a in ctx.anchor], zero_ms=True)
            return ts_vec(ctx.rng, ctx.anchor)

        return gen_main
    if name == "inserted_at":
        return lambda ctx: ts_vec(ctx.rng, ctx.ins)
    if name in ("updated_at", "last_updated_date", "consult_updated_at"):
        def gen_upd(ctx: Ctx) -> list[str]:
            r = ctx.rng.random
            lo_floor, hi = ctx.upd_lo, ctx.hi
            secs = []
            for ins in ctx.ins:
                lo = ins if ins > lo_floor else lo_floor
                secs.append(lo + int(r() * max(hi - lo, 0)) if hi > lo else hi)
            return ts_vec(ctx.rng, secs)
        return gen_upd
    # any other timestamp: near the row's anchor, often empty when optional
    empty = _empty_share(col, 0.55)
    if _has(name, "expiry", "end_time") or name.endswith("_to"):
        lo_off, hi_off = 0, 3600 * 2
    else:
        lo_off, hi_off = -3600, 3600

    def gen(ctx: Ctx) -> list[str]:
        r = ctx.rng.random
        span = hi_off - lo_off
        anchors = ctx.anchor

        def make(idx: list[int]) -> list[str]:
            return ts_vec(ctx.rng, [anchors[i] + lo_off + int(r() * span) for i in idx])

        return masked_at(ctx.rng, ctx.n, empty, make)

    return gen


def _gen_date(col: ColumnSpec, main: bool) -> Gen:
    name = col.column
    midnight = midnight_style(name)
    if main:
        return lambda ctx: date_vec(ctx.anchor, midnight=midnight)
    if name in ("dob", "date_of_birth"):
        def gen_dob(ctx: Ctx) -> list[str]:
            lo, hi = to_secs(date(1932, 1, 1)), ctx.hi - 30 * DAY
            return date_vec(uniform_secs(ctx.rng, ctx.n, lo, hi), midnight=midnight)
        return gen_dob
    # optional dates: empty, the 1900-01-01 "no date" sentinel, or a date near the anchor
    if col.required:
        empty, sentinel = 0.0, 0.0
    elif "death" in name:
        empty, sentinel = 0.6, 0.38
    elif _has(name, "exclusion", "stop_date", "end_date", "enddate"):
        empty, sentinel = 0.55, 0.35
    else:
        empty, sentinel = 0.4, 0.15
    future = _has(name, "expiry", "recall", "re_call", "end", "due") or name.endswith("_to")
    no_date = NO_DATE_SENTINEL + (" 00:00:00.000" if midnight else "")

    def gen(ctx: Ctx) -> list[str]:
        r = ctx.rng.random
        anchors = ctx.anchor

        def make(idx: list[int]) -> list[str]:
            if future:
                secs = [anchors[i] + int(r() * 730) * DAY for i in idx]
            else:
                secs = [anchors[i] - int(r() * 365) * DAY for i in idx]
            return date_vec(secs, midnight=midnight)

        vec = masked_at(ctx.rng, ctx.n, empty, make)
        if sentinel:
            t = round(sentinel * 256)
            vec = [no_date if b < t and v else v for v, b in zip(vec, ctx.rng.randbytes(ctx.n))]
        return vec

    return gen


# -- text ---------------------------------------------------------------------------------------


def _person_names(rng: Random, k: int) -> list[str]:
    r = rng.random
    F = FIRST_F + FIRST_M
    return [f"{F[int(r() * len(F))]} {FAMILY[int(r() * len(FAMILY))]}" for _ in range(k)]


def _phones(rng: Random, k: int, mobile: bool = True) -> list[str]:
    r = rng.random
    if mobile:
        return [f"+642{1 + int(r() * 8)}{int(r() * 10_000_000):07d}" for _ in range(k)]
    return [f"+64{(9, 7, 6, 4, 3)[int(r() * 5)]}{int(r() * 10_000_000):07d}" for _ in range(k)]


def _addresses(rng: Random, k: int) -> list[str]:
    r = rng.random
    out = []
    for _ in range(k):
        sub, city, pc = PLACES[int(r() * len(PLACES))]
        num = f"{1 + int(r() * 250)}{'ABC'[int(r() * 3)] if r() < 0.15 else ''}"
        out.append(f"{num} {STREETS[int(r() * len(STREETS))]}, {sub}, {city} {pc}")
    return out


def _hpi_cpn(rng: Random, k: int) -> list[str]:
    r = rng.random
    L = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    return [f"{int(r() * 100):02d}" + "".join(L[int(r() * 24)] for _ in range(4)) for _ in range(k)]


def _hpi_code(rng: Random, k: int, first: str) -> list[str]:
    r = rng.random
    A = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    L = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    return [f"{first}{A[int(r() * 34)]}{A[int(r() * 34)]}{int(r() * 1000):03d}-{L[int(r() * 24)]}" for _ in range(k)]


def _digits(rng: Random, k: int, width: int) -> list[str]:
    r = rng.random
    top = 10 ** width
    return [f"{int(r() * top):0{width}d}" for _ in range(k)]


def _text_rule(spec: ExtractSpec, col: ColumnSpec) -> Gen:
    """A generator for a text column, picked by what its name means."""
    name = col.column
    empty = _empty_share(col, 0.4)

    def pooled(values: Sequence[str], e: float = empty) -> Gen:
        pool = pool256(list(values), empty=e)
        return lambda ctx: pick(ctx.rng, pool, ctx.n)

    def made(fn: Callable[[Random, int], list[str]], e: float = empty) -> Gen:
        return lambda ctx: masked(ctx.rng, ctx.n, e, lambda k: fn(ctx.rng, k))

    if col.domain:
        return pooled(domain_values(col.domain, name), _empty_share(col, 0.05))
    if is_nhi_column(col):
        e = _empty_share(col, 0.7)
        return made(lambda rng, k: [make_nhi(rng) for _ in range(k)], e)
    if name in ("practice", "practice_name", "default_practice_name", "pho_name", "pho"):
        if name in ("pho_name", "pho"):
            return pooled(["EBPHA", "Eastern Bay PHO", "Western Bay of Plenty PHO"], _empty_share(col, 0.2))
        return lambda ctx: [ctx.practice.name] * ctx.n
    if name in ("location_name", "practice_location"):
        return lambda ctx: [ctx.practice.locations[i][1] for i in ctx.locations()] if ctx.practice.locations else [""] * ctx.n
    if name == "title":
        return pooled(TITLES_F + TITLES_M, _empty_share(col, 0.3))
    if name in ("first_name", "preferred_name"):
        return pooled(FIRST_F + FIRST_M, 0.0 if name == "first_name" else _empty_share(col, 0.8))
    if name == "middle_name":
        return pooled(FIRST_F + FIRST_M, _empty_share(col, 0.6))
    if name in ("family_name", "surname", "last_name", "other_maiden_name"):
        return pooled(FAMILY, 0.0 if name != "other_maiden_name" else _empty_share(col, 0.9))
    if name in ("full_name", "name", "account_holder", "emergency_contact_name", "secondary_contact_name",
                "default_gp_name", "specalist_name", "apc_name"):
        return made(_person_names, 0.0 if name == "full_name" else _empty_share(col, 0.5))
    if name in ("patient", "patient_name"):
        return made(_person_names, _empty_share(col, 0.0))
    if name in _PERSON_NAME_COLUMNS:
        return lambda ctx: pick_any(ctx.rng, ctx.staff, ctx.n)
    if "email" in name:
        def emails(rng: Random, k: int) -> list[str]:
            r = rng.random
            return [f"{FIRST_F[int(r() * len(FIRST_F))].lower()}.{FAMILY[int(r() * len(FAMILY))].lower().replace(' ', '').replace(chr(39), '')}"
                    f"{int(r() * 100)}@{EMAIL_DOMAINS[int(r() * len(EMAIL_DOMAINS))]}" for _ in range(k)]
        return made(emails, _empty_share(col, 0.5))
    if _has(name, "phone", "cell", "mobile", "fax", "pager", "after_hours_number", "emergency_number") or name in (
            "emergency_contact", "secondary_contact"):
        mobile = _has(name, "cell", "mobile")
        return made(lambda rng, k: _phones(rng, k, mobile), _empty_share(col, 0.5))
    if name in ("permanent_address", "postal_address", "temporary_address", "full_address", "address"):
        return made(_addresses, _empty_share(col, 0.1 if name == "permanent_address" else 0.6))
    if name.endswith("_street_number") or name.endswith("_house_number"):
        return made(lambda rng, k: [f"{1 + int(rng.random() * 250)}" for _ in range(k)], _empty_share(col, 0.3))
    if name.endswith("_building_number"):
        return pooled(["A", "B", "1", "2", "41C", "Unit 3"], _empty_share(col, 0.85))
    if name.endswith("suburb") or name == "suburb":
        return pooled([p[0] for p in PLACES], _empty_share(col, 0.2))
    if name.endswith("_city") or name == "city" or name == "placeof_birth":
        return pooled([p[1] for p in PLACES], _empty_share(col, 0.2))
    if name.endswith("postal_code") or name in ("postcode", "post_code"):
        return pooled([p[2] for p in PLACES], _empty_share(col, 0.2))
    if "country" in name:
        return pooled(COUNTRIES, _empty_share(col, 0.2))
    if name.endswith("dhb_code") or name in ("hpi_organization_id", "default_practice_edi") or "organization_id" in name:
        return made(lambda rng, k: _hpi_code(rng, k, "G"), _empty_share(col, 0.2))
    if name.startswith("hpi_facility") or name == "health_facility_no":
        return made(lambda rng, k: _hpi_code(rng, k, "F"), _empty_share(col, 0.3))
    if name in ("hpi_no", "hpi_number", "hpi_cpn"):
        return made(_hpi_cpn, _empty_share(col, 0.2))
    if name.endswith("domicile_code"):
        return made(lambda rng, k: _digits(rng, k, 4), _empty_share(col, 0.2))
    if name.endswith("meshblock"):
        return made(lambda rng, k: _digits(rng, k, 7), _empty_share(col, 0.3))
    if name.endswith("uncertainty_code"):
        return pooled(["1", "2", "3", "4", "9"], _empty_share(col, 0.3))
    if name in ("community_service_card_no", "health_card_no"):
        return made(lambda rng, k: _digits(rng, k, 16), _empty_share(col, 0.7))
    if name.startswith("ethcode"):
        return pooled([e[0] for e in ETHNICITIES], _empty_share(col, 0.2 if name == "ethcode" else 0.8))
    if "ethnicity" in name:
        return pooled([e[1] for e in ETHNICITIES], _empty_share(col, 0.2 if name == "ethnicity" else 0.8))
    if name in ("medicine_name", "medicine", "med_tech_generic_name", "substance_name", "reference_medication",
                "favourite_substance", "other_substance", "medicine_short_name"):
        return pooled(MEDICINES, _empty_share(col, 0.1))
    if name in ("vaccine_name", "vaccine", "brand"):
        return pooled([v[1] for v in VACCINES], _empty_share(col, 0.1))
    if name in ("vaccine_code", "code") and spec.extract in ("Vaccine", "Immunisations", "Recalls"):
        return pooled([v[0] for v in VACCINES], _empty_share(col, 0.1))
    if name in ("disease", "snomed_term", "med_tech_read_term", "recall", "reactions"):
        return pooled(DISEASES, _empty_share(col, 0.2))
    if name == "consult_time":
        return pooled(["5", "10", "15", "15", "20", "30"], _empty_share(col, 0.4))
    if name in ("age_group",):
        return pooled(VOCAB["age_group"], _empty_share(col, 0.05))
    if name in VOCAB:
        return pooled(VOCAB[name], _empty_share(col, 0.1))
    if _has(name, "status"):
        return pooled(domain_values(None, name), _empty_share(col, 0.2))
    if is_free_text(col):
        return pooled(NOTES, _empty_share(col, 0.6))
    if name.endswith("_code") or name.endswith("code") or name in ("sctid", "snomedid", "conceptid", "mgencode",
                                                                    "mclacode", "mimscode", "pharma_code"):
        return made(lambda rng, k: _digits(rng, k, 4 + (stable_hash(name) % 5)), _empty_share(col, 0.5))
    if name.endswith("_no") or name.endswith("_number") or name.endswith("no") or name in ("chart_number",):
        return made(lambda rng, k: _digits(rng, k, 5 + (stable_hash(name) % 6)), _empty_share(col, 0.6))
    if name.startswith("field") and name[5:].isdigit():
        return pooled(["", "Yes", "No", "120/80", "7.2", "Normal", "Declined", "23.5"], _empty_share(col, 0.85))
    # generic: a short word, often empty
    return pooled(["Yes", "No", "N/A", "Other", "Standard", "Review", "Completed", "A1", "Y3", "00-04"],
                  _empty_share(col, 0.5))


# ---------------------------------------------------------------------------------------------------
# Compilation: one generator per column of a spec
# ---------------------------------------------------------------------------------------------------

_COMPILED: dict[int, tuple[ExtractSpec, list[Gen]]] = {}


def main_date_column(spec: ExtractSpec) -> str | None:
    return None if spec.is_dimension else spec.core.main_date  # type: ignore[union-attr]


def column_generator(spec: ExtractSpec, col: ColumnSpec) -> Gen:
    """The generator of one column when nothing in ``Ctx.fixed`` overrides it."""
    name = col.column
    t = col.type
    main = name == main_date_column(spec)
    if name == "loaded_date_time" and t is ContractType.TIMESTAMP_NZ:
        return lambda ctx: [ctx.loaded] * ctx.n
    if name == "per_org_id":
        return lambda ctx: [str(ctx.practice.per_org_id)] * ctx.n
    if name == "practice_id":
        return lambda ctx: [str(ctx.practice.practice_id)] * ctx.n
    if name == "practice_location_id" and t in (ContractType.BIGINT, ContractType.INTEGER):
        return lambda ctx: [ctx.practice.locations[i][0] for i in ctx.locations()] if ctx.practice.locations else [""] * ctx.n
    if t is ContractType.BOOLEAN:
        return _gen_boolean(col)
    if t is ContractType.UUID:
        return _gen_uuid(col)
    if t is ContractType.DOUBLE:
        return _gen_double(col)
    if t is ContractType.MONEY:
        return _gen_money(col)
    if t is ContractType.NUMERIC:
        return _gen_numeric(col)
    if t in (ContractType.BIGINT, ContractType.INTEGER):
        return _gen_integer(col, t is ContractType.BIGINT)
    if t is ContractType.TIMESTAMP_NZ:
        return _gen_timestamp(col, main)
    if t is ContractType.DATE:
        return _gen_date(col, main)
    return _text_rule(spec, col)


def compiled(spec: ExtractSpec) -> list[Gen]:
    """Generators for every column of ``spec`` in file order (cached per spec object)."""
    hit = _COMPILED.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    gens = [column_generator(spec, c) for c in spec.columns]
    _COMPILED[id(spec)] = (spec, gens)
    return gens


def build_columns(spec: ExtractSpec, ctx: Ctx) -> list[list[str]]:
    """Column vectors (file order) for ``ctx.n`` rows; ``ctx.fixed`` wins over the generators."""
    out = []
    fixed = ctx.fixed
    for col, gen in zip(spec.columns, compiled(spec)):
        vec = fixed.get(col.column)
        if vec is None:
            vec = gen(ctx)
        if len(vec) != ctx.n:  # pragma: no cover - a generator bug, never data
            raise AssertionError(f"{spec.extract}.{col.column}: {len(vec)} values for {ctx.n} rows")
        out.append(vec)
    return out


def build_rows(spec: ExtractSpec, ctx: Ctx) -> list[list[str]]:
    if ctx.n == 0:
        return []
    return [list(r) for r in zip(*build_columns(spec, ctx))]


# ---------------------------------------------------------------------------------------------------
# Coherent person data (Patients, Providers): names, gender, title, email, dob, age
# ---------------------------------------------------------------------------------------------------


def person_columns(spec: ExtractSpec, rng: Random, n: int, at: int) -> dict[str, list[str]]:
    """Coherent person attributes for the columns ``spec`` has (``at`` = the 'today' for ages)."""
    names = set(spec.column_names)
    if not ({"first_name", "family_name"} <= names):
        return {}
    r = rng.random
    out: dict[str, list[str]] = {k: [] for k in (
        "first_name", "family_name", "full_name", "title", "gender", "gender_id", "dob", "age", "age_type",
        "age_group", "email") if k in names}
    midnight = midnight_style("dob")
    lo_dob = to_secs(date(1932, 1, 1))
    D = day_strings()
    gender_values = domain_values(spec.column("gender").domain, "gender") if "gender" in names else []
    for _ in range(n):
        female = r() < 0.52
        first = (FIRST_F if female else FIRST_M)[int(r() * 40)]
        fam = FAMILY[int(r() * len(FAMILY))]
        if "first_name" in out:
            out["first_name"].append(first)
        if "family_name" in out:
            out["family_name"].append(fam)
        if "full_name" in out:
            out["full_name"].append(f"{first} {fam}")
        if "title" in out:
            out["title"].append("" if r() < 0.3 else (TITLES_F if female else TITLES_M)[int(r() * 4)])
        if "gender" in out:
            g = "Female" if female else "Male"
            if r() < 0.02:
                g = "Unknown"
            if g not in gender_values and gender_values:
                g = gender_values[0 if female else min(1, len(gender_values) - 1)]
            out["gender"].append(g)
        if "gender_id" in out:
            out["gender_id"].append("1" if female else "2")
        dob = lo_dob + int(r() * max(at - 30 * DAY - lo_dob, DAY))
        dob -= dob % DAY
        if "dob" in out:
            out["dob"].append(D[dob // DAY] + (" 00:00:00.000" if midnight else ""))
        years = max(0, (at - dob) // (365 * DAY + DAY // 4))
        if "age" in out:
            if years >= 1:
                out["age"].append(str(years))
            else:
                out["age"].append(str(max(0, (at - dob) // (30 * DAY))))
        if "age_type" in out:
            out["age_type"].append("Year(s)" if years >= 1 else "Month(s)")
        if "age_group" in out:
            grp = ("00-04" if years < 5 else "05-14" if years < 15 else "15-24" if years < 25 else
                   "25-44" if years < 45 else "45-64" if years < 65 else "65+")
            out["age_group"].append(grp)
        if "email" in out:
            if r() < 0.45:
                out["email"].append("")
            else:
                clean = fam.lower().replace(" ", "").replace("'", "")
                out["email"].append(f"{first.lower().replace(' ', '')}.{clean}{int(r() * 100)}@"
                                    f"{EMAIL_DOMAINS[int(r() * len(EMAIL_DOMAINS))]}")
    # keep only what fits the column's contract type (a spec may type 'age' as text, 'dob' as date...)
    allowed = {
        "dob": (ContractType.DATE,),
        "age": (ContractType.INTEGER, ContractType.BIGINT, ContractType.TEXT),
        "gender_id": (ContractType.INTEGER, ContractType.BIGINT, ContractType.TEXT),
    }
    for col_name in list(out):
        if spec.column(col_name).type not in allowed.get(col_name, (ContractType.TEXT,)):
            del out[col_name]
    return out


__all__ = [
    "NHI_ALPHABET", "nhi_is_valid", "make_nhi", "make_invalid_nhi", "unique_nhis",
    "BASE_DATE", "DAY", "to_secs", "from_secs", "fmt_ts", "fmt_date", "fix_dst", "dst_days",
    "dst_transition_dates", "ts_vec", "date_vec", "fmt_money", "fmt_double", "fmt_uuid",
    "VOCAB", "domain_values", "UNKNOWN_DOMAIN_VALUES", "PracticeInfo", "make_practice", "Ctx",
    "column_generator", "compiled", "build_columns", "build_rows", "person_columns", "is_free_text",
    "is_nhi_column", "main_date_column", "pool256", "pick", "pick_any", "masked", "masked_at",
]


# ---------------------------------------------------------------------------------------------------
# Seeds and fallbacks
# ---------------------------------------------------------------------------------------------------


def sub_rng(seed: int | str, *parts: object) -> Random:
    """An independent, reproducible Random for one part of the generation (order-independent)."""
    return Random("|".join([str(seed), *map(str, parts)]))


def mutate_value(spec: ExtractSpec, col: ColumnSpec, old: str, rng: Random) -> str:
    """A value of ``col``'s type that differs from ``old`` (used when fresh values happen to repeat)."""
    t = col.type
    if col.domain or col.column in VOCAB:
        others = [v for v in domain_values(col.domain, col.column) if v != old]
        if t in (ContractType.BIGINT, ContractType.INTEGER):
            others = [str(i) for i in range(1, len(others) + 2) if str(i) != old]
        if others:
            return rng.choice(others)
    if t is ContractType.BOOLEAN:
        return "0" if old == "1" else "1"
    if t in (ContractType.BIGINT, ContractType.INTEGER):
        return str(int(old) + 1) if old.strip().lstrip("+-").isdigit() else "1"
    if t is ContractType.MONEY:
        try:
            cents = round(float(old or 0) * 100)
        except ValueError:
            cents = 0
        return fmt_money(cents + 100)
    if t in (ContractType.NUMERIC,):
        return "1" if old != "1" else "2"
    if t is ContractType.DOUBLE:
        return fmt_double(round(rng.uniform(-46.0, -35.0), 6))
    if t is ContractType.UUID:
        return fmt_uuid(rng.getrandbits(128))
    if t is ContractType.DATE:
        d = old[:10] if re.match(r"^\d{4}-\d{2}-\d{2}", old or "") and not old.startswith("1900") else "2024-01-01"
        nd = date.fromisoformat(d) + timedelta(days=1 + rng.randrange(60))
        return nd.isoformat() + old[10:]
    if t is ContractType.TIMESTAMP_NZ:
        base = datetime(2024, 1, 1, 9, 0)
        if re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", old or ""):
            base = datetime.fromisoformat(old[:19])
        return fmt_ts(fix_dst(to_secs(base) + 3600 * (1 + rng.randrange(48))), MS_POOL[rng.randrange(256)])
    if col.column in ("family_name", "surname", "last_name"):
        others = [f for f in FAMILY if f != old]
        return rng.choice(others)
    if col.column in ("permanent_address", "postal_address", "address", "full_address"):
        while True:
            v = _addresses(rng, 1)[0]
            if v != old:
                return v
    return (old.strip() + " (updated)") if old.strip() else "Updated"
