"""DICOMweb: the STOW-RS receiver's request parsing (PS3.18 §10.5)."""
