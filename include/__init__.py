"""Project logic used by the DAGs: plain Python, importable and testable without Airflow."""
