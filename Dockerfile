FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY revocation ./revocation
COPY workers ./workers
COPY examples ./examples
RUN pip install --no-cache-dir ".[fastapi,metrics]" "uvicorn>=0.30,<1"
USER nobody
CMD ["python", "-m", "workers.publisher"]
