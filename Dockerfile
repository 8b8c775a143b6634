# One image for every service: `convbus api|child|tracker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies in their own layer: rebuilt only when the lock or the project's list changes.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" > /tmp/deps.txt \
 && pip install -c requirements.lock -r /tmp/deps.txt

COPY README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . && useradd --create-home --uid 10001 convbus \
 && mkdir -p /var/lib/convbus && chown convbus:convbus /var/lib/convbus
USER convbus
# The child's record of finished handlers (see docs/reliability.md).
ENV RELAY_STATE_DIR=/var/lib/convbus

EXPOSE 8008
CMD ["convbus", "api", "--host", "0.0.0.0"]
