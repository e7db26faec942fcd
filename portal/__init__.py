"""The web portal for tier 2 sites and tier 3 transcription (server-rendered). Not built yet:
see the README's status section."""
