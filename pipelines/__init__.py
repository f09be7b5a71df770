"""Beam job (raw logs -> TFRecords, quarantine, counts, stats) and the daily orchestration."""
