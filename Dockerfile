# One image for every MCM process of compose.yaml: web (gunicorn), worker, beat and migrate.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# On x86-64 every pinned package installs from a wheel (manylinux, glibc 2.34 or older), so the slim
# image needs no compiler. Other architectures are untested.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# collectstatic only imports the settings, which require these variables; it connects to neither
# the database nor the broker. The files land in STATIC_ROOT, /app/var/static.
RUN DEBUG=0 SECRET_KEY=collectstatic-only DATABASE_URL=postgres://unused@localhost/unused \
    CELERY_BROKER_URL=redis://localhost:6379/0 python manage.py collectstatic --noinput

RUN useradd --system --uid 10001 --no-create-home --home-dir /app mcm
USER mcm

EXPOSE 8000
CMD ["gunicorn", "mcm_site.wsgi", "--timeout", "120", "--access-logfile", "-"]
