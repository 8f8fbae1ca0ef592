"""Airflow DAG: the pipeline's steps as one BashOperator task each, calling the same CLI.

Copy (or symlink) this file into Airflow's dags folder and set the Airflow Variables
``recsys_moe_repo`` (the checkout, default /srv/recsys-moe) and ``recsys_moe_config`` (default
configs/synthetic.yaml). Each task runs ``recsys-moe pipeline run --step <step>`` for the run's
logical date, so Airflow retries a failed step alone and the step log (steps.json) stays the
source of truth; the pipeline's own lock still stops two runs at once.
"""

from __future__ import annotations

import datetime as dt

STEPS = ("features_fit", "features_transform", "train", "export", "evaluate", "score", "promote")


def build_dag():
    from airflow import DAG
    from airflow.models import Variable

    try:
        from airflow.providers.standard.operators.bash import BashOperator
    except ImportError:  # Airflow 2
        from airflow.operators.bash import BashOperator

    repo = Variable.get("recsys_moe_repo", default_var="/srv/recsys-moe")
    config = Variable.get("recsys_moe_config", default_var="configs/synthetic.yaml")
    with DAG(
        dag_id="recsys_moe_pipeline",
        schedule="15 3 * * *",
        start_date=dt.datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
        tags=["recsys-moe"],
    ) as dag:
        previous = None
        for step in STEPS:
            task = BashOperator(
                task_id=step,
                bash_command=f"cd {repo} && .venv/bin/recsys-moe pipeline run -c {config} --as-of {{{{ ds }}}} --step {step}",
            )
            if previous is not None:
                previous >> task
            previous = task
    return dag


try:
    dag = build_dag()
except ImportError:  # imported without Airflow (tests, docs): nothing to build
    dag = None
