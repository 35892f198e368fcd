"""Grafana as code: the dashboards' generator (generate.py) and its provisioning files."""
