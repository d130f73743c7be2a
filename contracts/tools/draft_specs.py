"""Draft extract contracts from the provider's column list and the sample files.

This is a drafting aid, not the source of truth: the committed YAML files in contracts/extracts/ are
the maintained artefacts and have been reviewed column by column. Run it to get a starting point for a
new extract, or to compare a fresh draft with the reviewed specs:

    python -m contracts.tools.draft_specs OUT_DIR [--docs DIR] [--extract NAME ...] [--force]

It writes OUT_DIR/<table>.yaml for each extract of <docs>/extracts.yaml and refuses to write into the
committed spec directory (or over existing files without --force). Types are proposed from column
names and, where a sample file exists in <docs>/samples/, checked against the sample values.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

from contracts.registry import SPEC_DIR
from contracts.types import ContractType, rule_for

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DOCS = Path(os.environ.get("INDICI_DOCS_DIR", REPO_ROOT.parent / "shared" / "indici"))

FIELD_SEP = "|^^|"
ROW_SEP = "|~~|"

# PRODUCT.md "Natural keys": the extract's own id column (+ practice_id + per_org_id).
ID_COLUMNS = {
    "Allergies": "allergy_id",
    "AppointmentMedications": "medication_id",
    "Appointments": "appointment_id",
    "Diagnoses": "diagnosis_id",
    "Immunisations": "appointment_immunisation_id",
    "Inbox": "inbox_folder_item_id",
    "InboxDetail": "in_box_folder_item_in_line_id",
    "InvoiceDetail": "invoice_detail_id",
    "Invoices": "invoice_transaction_id",
    "Measurements": "screaning_id",
    "Medicine": "medicine_id",
    "NextOfKin": "nextto_kin_id",
    "PatientAlerts": "patient_alert_id",
    "Patients": "patient_id",
    "PracticeInfo": None,
    "Providers": "provider_id",
    "Recalls": "re_call_id",
    "Vaccine": "vaccine_id",
}

FACTS = {
    "Allergies": "fact_allergy",
    "AppointmentMedications": "fact_appointment_medication",
    "Appointments": "fact_appointment",
    "Diagnoses": "fact_diagnosis",
    "Immunisations": "fact_immunisation",
    "Inbox": "fact_inbox",
    "InboxDetail": "fact_inbox_detail",
    "InvoiceDetail": "fact_invoice_detail",
    "Invoices": "fact_invoice",
    "Measurements": "fact_measurement",
    "NextOfKin": "fact_next_of_kin",
    "PatientAlerts": "fact_patient_alert",
    "Recalls": "fact_recall",
}

DIMENSIONS = {
    "Patients": "dim_patient",
    "Providers": "dim_provider",
    "PracticeInfo": "dim_practice",
    "Vaccine": "dim_vaccine",
    "Medicine": "dim_medicine",
}

# Column name -> extract whose row id it holds (only unambiguous ones; the reviewer decides the rest).
REFERENCES = {
    "patient_id": "Patients",
    "provider_id": "Providers",
    "vaccine_id": "Vaccine",
    "medicine_id": "Medicine",
    "appointment_id": "Appointments",
    "invoice_transaction_id": "Invoices",
    "inbox_folder_item_id": "Inbox",
}

MONEY_WORDS = ("amount", "price", "fee", "balance", "cost", "copayment", "co_payment", "subsidy")
GUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")

NAME_COLUMNS = {
    "first_name", "middle_name", "family_name", "full_name", "preferred_name", "other_maiden_name",
    "name", "patient_name", "patient", "account_holder", "emergency_contact_name",
    "secondary_contact_name",
}
FREE_TEXT_COLUMNS = {
    "notes", "note", "comment", "comments", "reaction_notes", "claim_notes", "summary",
    "practice_remarks", "insured_remarks", "transferof_records_remarks", "nes_comments",
}


def propose_type(source: str, column: str) -> ContractType:
    """A type from the column's name alone."""
    low = column.lower()
    if low in ("nhi_number",):
        return ContractType.TEXT
    if "latitude" in low or "longitude" in low:
        return ContractType.DOUBLE
    if re.match(r"^(Is|Has)[A-Z0-9]", source):
        return ContractType.BOOLEAN
    if source.endswith("DateTime") or re.search(r"[a-z]At$", source) or source.endswith("Time"):
        return ContractType.TIMESTAMP_NZ
    if re.search(r"(^|_)date|date$", low) or source in ("DOB", "VisaExpiry"):
        return ContractType.DATE
    if re.search(r"(ID|Id)$", source) and not source.endswith("GUID"):
        return ContractType.BIGINT
    if any(w in low for w in MONEY_WORDS):
        return ContractType.MONEY
    # Everything else, including codes and numbers that may carry leading zeros or a "+", is text.
    return ContractType.TEXT


def propose_pii(column: str, ctype: ContractType) -> str | None:
    low = column.lower()
    if low == "nhi_number":
        return "nhi"
    if low == "dob":
        return "birth_date"
    if low in NAME_COLUMNS:
        return "name"
    if any(w in low for w in ("phone", "email", "cell_number", "fax", "pager")) or low.endswith("_contact"):
        return "contact"
    if low in FREE_TEXT_COLUMNS or low.endswith("_notes") or low.endswith("_remarks"):
        return "free_text"
    if ctype is not ContractType.DOUBLE and any(
        w in low for w in ("address", "suburb", "city", "postal_code", "house_number", "street_number")
    ) and not low.endswith("_id") and "dhb" not in low and "domicile" not in low and "depriv" not in low \
            and "meshblock" not in low and "match_score" not in low and "uncertainty" not in low \
            and "country" not in low:
        return "address"
    return None


def matches(ctype: ContractType, value: str) -> bool:
    pattern = rule_for(ctype).pattern
    return pattern is None or re.match(pattern, value.strip()) is not None


def refine_with_samples(ctype: ContractType, values: list[str]) -> tuple[ContractType, str | None]:
    """Adjust a name-based type to what the sample values show; returns (type, note)."""
    seen = [v.strip() for v in values if v.strip()]
    if not seen:
        return ctype, None
    if all(GUID.match(v) for v in seen):
        return ContractType.UUID, "sample values are GUIDs"
    if ctype is ContractType.BOOLEAN and not all(v in ("0", "1") for v in seen):
        if all(matches(ContractType.INTEGER, v) for v in seen):
            return ContractType.INTEGER, f"named like a flag but sample has {sorted(set(seen))}"
        return ContractType.TEXT, f"named like a flag but sample has {sorted(set(seen))}"
    if ctype in (ContractType.DATE, ContractType.TIMESTAMP_NZ):
        has_time = any(re.search(r"\d \d{2}:\d{2}", v) for v in seen)
        if has_time:
            return ContractType.TIMESTAMP_NZ, None
        if all(matches(ContractType.DATE, v) for v in seen):
            return ContractType.DATE, None
    if ctype is ContractType.BIGINT and not all(matches(ctype, v) for v in seen):
        return ContractType.TEXT, f"sample {seen} is not an integer"
    if any(v.startswith(("0", "+")) and len(v) > 1 and v[1:2].isdigit() for v in seen):
        return ContractType.TEXT, "leading zero or plus in sample"
    if not all(matches(ctype, v) for v in seen):
        return ContractType.TEXT, f"sample {seen} does not match {ctype.value}"
    return ctype, None


def read_samples(docs: Path, tokens: list[str], count: int) -> list[list[str]]:
    """Rows of every sample file of this extract (naive split; samples are small)."""
    rows: list[list[str]] = []
    wanted = {t.lower() for t in tokens}
    for path in sorted((docs / "samples").glob("*")):
        parts = path.name.split("_")
        if len(parts) < 3 or parts[2].lower() not in wanted:
            continue
        raw = path.read_bytes()
        text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-16-le")
        for chunk in text.split(ROW_SEP):
            if not chunk.strip():
                continue
            fields = chunk.split(FIELD_SEP)
            if len(fields) == count:
                rows.append(fields)
    return rows


def flow(mapping: dict) -> str:
    """One YAML flow mapping on one line."""
    parts = []
    for key, value in mapping.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str) and (re.search(r"[:#,\[\]{}&*!|>'\"%@`]", value) or value == ""):
            text = '"' + value.replace('"', '\\"') + '"'
        else:
            text = str(value)
        parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


def draft(name: str, doc: dict, docs: Path) -> str:
    cols = doc["columns"]
    rows = read_samples(docs, doc["file_tokens"], len(cols))
    id_col = ID_COLUMNS.get(name, cols[0]["column"])
    natural_key = [c for c in (id_col, "practice_id", "per_org_id") if c]
    lines = [
        f"# {name}: DRAFT from contracts/tools/draft_specs.py - review every column before use.",
        f"extract: {name}",
        f"table: {doc['table']}",
        f"file_tokens: [{', '.join(doc['file_tokens'])}]",
        f"natural_key: [{', '.join(natural_key)}]",
    ]
    main_date = None
    if name in DIMENSIONS:
        lines.append(f"core: {{role: dimension, table: {DIMENSIONS[name]}, tracked: []}}")
    else:
        names = [c["column"] for c in cols]
        main_date = next((n for n in names if n.endswith("_date") or n == "acdate"), "inserted_at")
        table = FACTS.get(name, f"fact_{doc['table']}")
        lines.append(f"core: {{role: fact, table: {table}, main_date: {main_date}}}")
    lines.append("dq: {max_reject_rate: 0.05}")
    lines.append("columns:")
    for i, col in enumerate(cols):
        source, column = col["source"], col["column"]
        ctype = propose_type(source, column)
        note = None
        if rows:
            ctype, note = refine_with_samples(ctype, [r[i] for r in rows])
        entry: dict = {"source": source, "column": column, "type": ctype.value}
        if column in natural_key or column == main_date:
            entry["type"] = "bigint" if column in natural_key else entry["type"]
            entry["required"] = True
        ref = REFERENCES.get(column)
        if ref and ref != name and column not in natural_key:
            entry["references"] = ref
        pii = propose_pii(column, ctype)
        if pii:
            entry["pii"] = pii
        line = "- " + flow(entry)
        if note:
            line += f"  # {note}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the drafts to")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="folder with extracts.yaml")
    parser.add_argument("--extract", action="append", help="only these extracts (repeatable)")
    parser.add_argument("--force", action="store_true", help="overwrite existing draft files")
    args = parser.parse_args(argv)

    out = args.out_dir.resolve()
    if out == SPEC_DIR.resolve():
        print(f"refusing to write drafts into the committed spec directory {SPEC_DIR}", file=sys.stderr)
        return 2
    doc_file = args.docs / "extracts.yaml"
    if not doc_file.is_file():
        print(f"no extracts.yaml in {args.docs}", file=sys.stderr)
        return 2
    extracts = yaml.safe_load(doc_file.read_text(encoding="utf-8"))["extracts"]
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in extracts.items():
        if args.extract and name not in args.extract:
            continue
        target = out / f"{doc['table']}.yaml"
        if target.exists() and not args.force:
            print(f"skip {target} (exists; use --force)", file=sys.stderr)
            continue
        target.write_text(draft(name, doc, args.docs), encoding="utf-8")
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
