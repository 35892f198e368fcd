"""Pipeline health: the checks of the pipeline_health DAG and of `make status` (`checks`: measure,
judge, store) and the DAG's Airflow adapter (`tasks`)."""
