"""Stage 2, change capture: the publication and the Debezium connector on Kafka Connect (`setup`,
`kafka_connect`), the rules change events follow (`events`, shared with the Spark job and the
bridge), and the Airflow adapter of the cdc_setup DAG (`tasks`)."""
