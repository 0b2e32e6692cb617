"""Offline evaluation: dataset layouts and anomaly-detection metrics."""
