from tests.hub.api.conftest import (  # noqa: F401  (fixtures shared with the API tests)
    api,
    client_keys,
    fhir_app,
    fhir_partners,
    fhir_profiles,
    fhir_settings,
    live,
)
