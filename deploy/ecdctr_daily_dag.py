"""Airflow DAG: the daily job for each day's data interval, with a task per outcome the
scheduler should see (README "Exit codes"). Put this file in Airflow's dags/ folder on a host
where `ecdctr` is installed (or swap the BashOperator for a KubernetesPodOperator running the
training image)."""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator

CONFIG = "/opt/ecdctr/configs/prod.yaml"

with DAG(
    dag_id="ecdctr_daily",
    schedule="15 2 * * *",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # days build on each other: never two at once
    default_args={"retries": 0},
    tags=["ecdctr"],
) as dag:
    # {{ ds }} is the logical date (the day whose data just completed). Exit 4 (nothing to do)
    # is a success; 0 published; 3 rejected, 5 degraded and 1 failed fail the task so Airflow
    # alerts; `skip_on_exit_code` could mark 3 as skipped instead.
    daily = BashOperator(
        task_id="daily",
        bash_command=(f"ecdctr daily --config={CONFIG} --date={{{{ ds }}}}; code=$?; "
                      "if [ $code -eq 4 ]; then exit 0; fi; exit $code"),
        execution_timeout=dt.timedelta(hours=6),
    )
