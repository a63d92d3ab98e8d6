"""Durable jobs: the spool of received DICOM instances, series assembly, the job store and the outbox."""
