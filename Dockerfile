# One image for every EdgeAIForge service, the one-shot set-up steps and the simulated
# devices (docker-compose.yml picks the command). Build: docker build -t edgeaiforge .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md LICENSE ./
COPY schemas/ schemas/
COPY modelkit/ modelkit/
COPY services/ services/
COPY edge_runtime/ edge_runtime/
COPY edgeaiforge/ edgeaiforge/
COPY edgeaiforge_stack/ edgeaiforge_stack/
# The platform install: the services, the stack's set-up steps and the device runtime.
RUN pip install '.[platform]' \
    && useradd --system --uid 10001 --home-dir /var/lib/edgeaiforge --create-home eaf \
    && install -d -o eaf -g eaf /var/lib/edgeaiforge/models /var/lib/edgeaiforge/keys \
       /var/lib/edgeaiforge/cache /var/lib/edgeaiforge/ingester /var/lib/edgeaiforge/stack

COPY config/ config/
COPY mosquitto/ mosquitto/
COPY nats/ nats/

USER eaf
ENV EAF_CONFIG=/app/config/docker.toml
CMD ["python", "-m", "services.api"]
