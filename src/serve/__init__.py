"""HTTP inference API: the trained fold ensemble behind ``POST /api/predict``."""
