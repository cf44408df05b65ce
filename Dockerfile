# One region node: `kms serve`, as pip installs it. compose.yaml runs three of these.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project (what .dockerignore leaves: sources, pyproject.toml, README.md), installed
# as a regular package, then removed: the image runs the installed copy only.
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

# Non-root. /data is created here and owned by the user so a named volume mounted on it
# starts out writable (Docker copies the mount point's owner into a new volume).
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin kms \
    && mkdir -p /data && chown kms:kms /data && chmod 700 /data
USER kms
WORKDIR /data
VOLUME ["/data"]

EXPOSE 8080
ENTRYPOINT ["kms"]
# With no arguments: a node on 0.0.0.0:8080 keeping its data in /data/kms-data.
CMD ["serve", "--host", "0.0.0.0"]
