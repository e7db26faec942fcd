"""Chain of identity: ISBT 128 and GS1 identifiers, scans, verification events, custody."""
