-- Run once by the postgres container: one database per service.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
