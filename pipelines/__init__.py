"""The jobs: batch scoring (built), scheduled training and offline evaluation (open issues)."""
