"""HTTP edge: health, metrics, FHIR reads. Routes are thin; the store and services decide."""
