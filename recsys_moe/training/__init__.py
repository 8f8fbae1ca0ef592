"""Training: Parquet -> batches -> LightningModule -> checkpoints, model folder and MLflow run."""
