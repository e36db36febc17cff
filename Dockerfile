# incognito-onion in a container. tor and coturn come from Debian through
# scripts/install-system-deps (the same script ./scripts/up runs, so there is one list of system
# packages), the package goes into a virtualenv made by scripts/bootstrap-venv, it runs as a
# non-root user, and the state dir (onion key, TURN secret, participant keys) is a volume.
#
#   docker build -t incognito-onion .
#   docker run -d --init --name incognito-onion \
#     -v incognito-onion:/var/lib/incognito-onion -e INCOGNITO_TOR_PERSISTENT_KEY=true \
#     incognito-onion
#   docker logs incognito-onion      # the room link: http://<56 chars>.onion/r/<room>#<key>
#
# tor runs inside the container and reaches the web server on 127.0.0.1 (server.host in the
# shipped config), so nothing needs publishing with -p. See docs/self-hosting.md.
FROM debian:bookworm-slim

ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/incognito-onion

# System packages first, from the install script alone, so this layer is rebuilt only when
# the package list changes.
COPY scripts/install-system-deps scripts/
RUN scripts/install-system-deps runtime \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The package, installed the way ./scripts/up installs it.
COPY scripts/bootstrap-venv scripts/
COPY pyproject.toml README.md ./
COPY incognito_onion/ incognito_onion/
RUN scripts/bootstrap-venv runtime \
    && .venv/bin/incognito-onion --version
COPY static/ static/
COPY deploy/healthcheck.py deploy/
COPY config/config.yaml /etc/incognito-onion/config.yaml

RUN useradd --system --user-group --home-dir /var/lib/incognito-onion \
        --shell /usr/sbin/nologin incognito-onion \
    && install -d -m 0700 -o incognito-onion -g incognito-onion /var/lib/incognito-onion

ENV PATH=/opt/incognito-onion/.venv/bin:$PATH \
    INCOGNITO_CONFIG=/etc/incognito-onion/config.yaml \
    INCOGNITO_STATE_DIR=/var/lib/incognito-onion
VOLUME ["/var/lib/incognito-onion"]
USER incognito-onion

# /healthz answers as soon as the web server listens (before tor has bootstrapped).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/opt/incognito-onion/.venv/bin/python", "/opt/incognito-onion/deploy/healthcheck.py"]

# Arguments to `docker run IMAGE ...` go to `incognito-onion up` (e.g. --no-turn).
ENTRYPOINT ["incognito-onion", "up"]
