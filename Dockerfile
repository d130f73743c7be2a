# One image for every role of the stack (migrate, worker, beat, flower, health); the command decides.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the service needs at run time (alembic/ and alembic.ini are read from the source tree by
# `indici-ingest migrate`, hence the editable install rooted at /app).
COPY pyproject.toml README.md alembic.ini ./
COPY contracts ./contracts
COPY worker ./worker
COPY scheduler ./scheduler
COPY alembic ./alembic
COPY ops ./ops
RUN pip install -e . \
    && useradd --create-home --uid 10001 indici

# Not root: a worker reads S3 and writes Postgres, nothing on this filesystem but its temp files.
USER indici

CMD ["celery", "-A", "worker.app", "worker", "--loglevel=INFO"]
