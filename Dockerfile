# jobgrid node image.
#
# Built offline: the context must contain wheels/ with the jobgrid wheel and all its runtime
# dependencies (`pip wheel . -w wheels`); nothing is downloaded during the build.
#   harness:  harness image          (debootstrap base jobgrid-base:bookworm + this file)
#   by hand:  pip wheel . -w wheels && docker build --network none -t jobgrid-node:latest .
#             (add --build-arg BASE_IMAGE=jobgrid-base:bookworm where python:3.11-slim
#              cannot be pulled)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

COPY wheels/ /wheels/

RUN python3 -m venv /opt/jobgrid \
 && /opt/jobgrid/bin/pip install --no-index --find-links /wheels jobgrid \
 && rm -rf /wheels \
 && groupadd --system --gid 999 jobgrid \
 && useradd --system --uid 999 --gid 999 --create-home --home-dir /home/jobgrid --shell /usr/sbin/nologin jobgrid \
 && mkdir -p /data \
 && chown jobgrid:jobgrid /data

# uid/gid 999 are named in deploy/kubernetes (runAsUser, fsGroup) and deploy/swarm (user, secret uid)
USER jobgrid
WORKDIR /home/jobgrid

ENV PATH=/opt/jobgrid/bin:$PATH \
    JOBGRID_DATA_DIR=/data \
    JOBGRID_HOST=0.0.0.0 \
    JOBGRID_PORT=8000

EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('JOBGRID_PORT', '8000'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["jobgrid", "server"]
