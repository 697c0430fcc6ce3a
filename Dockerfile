FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY revocation ./revocation
COPY workers ./workers
COPY examples ./examples
RUN pip install --no-cache-dir .
USER nobody
CMD ["python", "-m", "workers.publisher"]
