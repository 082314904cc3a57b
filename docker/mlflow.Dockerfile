# MLflow tracking server + registry on PostgreSQL, artifacts on S3-compatible storage (boto3), basic auth on.
FROM python:3.11.11-slim-bookworm
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.10 Flask-WTF==1.2.2 boto3==1.43.117
USER 65534
EXPOSE 5000
