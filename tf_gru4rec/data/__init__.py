"""Click-log reading, item vocabulary, session logs, preprocessing and synthetic data."""
