# One image for every service of the bus; the command picks the service:
#   convbus api --host 0.0.0.0 | convbus child --pool P | convbus tracker | convbus migrate
# docker-compose.yml runs each of them; tests/unit/test_unit_deploy.py checks this file.
ARG PYTHON_VERSION=3.11

# --- build: a virtualenv with the locked dependencies and the project. Every locked dependency
# ships a manylinux wheel, so no compiler is needed; the build stage only keeps pip's and the
# build backend's files out of the final image.
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# A venv without pip of its own: the base image's pip installs into it (--python).
RUN python -m venv --without-pip /opt/convbus
WORKDIR /src

# Dependencies in their own layer: rebuilt only when pyproject.toml or the lock changes. The
# runtime dependencies are pyproject's list, at the versions of requirements.lock (which also
# pins the dev tools, left out here).
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/deps.txt \
 && pip --python /opt/convbus/bin/python install -c requirements.lock -r /tmp/deps.txt

# The project itself (hatchling wants the README named in pyproject.toml).
COPY README.md ./
COPY shared ./shared
COPY services ./services
COPY cli ./cli
RUN pip --python /opt/convbus/bin/python install --no-deps .

# --- runtime: the slim base, the venv, an unprivileged user.
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/convbus/bin:$PATH \
    RELAY_STATE_DIR=/var/lib/convbus
# RELAY_STATE_DIR: the child's record of finished handlers (docs/reliability.md); compose gives
# each child replica a volume there.
RUN groupadd --system --gid 10001 convbus \
 && useradd --system --uid 10001 --gid convbus --no-create-home --home-dir /var/lib/convbus \
      --shell /usr/sbin/nologin convbus \
 && mkdir -p /var/lib/convbus \
 && chown convbus:convbus /var/lib/convbus
COPY --from=build /opt/convbus /opt/convbus
# Numeric, so that a platform that only allows non-root images (runAsNonRoot) can verify it.
USER 10001:10001
WORKDIR /var/lib/convbus

# The API; the child's, the tracker's and the webhooks' /healthz, /readyz and /metrics (RELAY_OPS_PORT).
EXPOSE 8008 8010 8011 8012
CMD ["convbus", "api", "--host", "0.0.0.0", "--port", "8008"]
