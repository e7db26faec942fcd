"""Versioned FHIR R4 resource store with search indexes (validated with fhir.resources R4B)."""
