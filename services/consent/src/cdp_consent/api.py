"""HTTP routes of the consent service."""

from __future__ import annotations

from cdp_common.privacy import access_router

from cdp_consent import store
from cdp_consent.consumer import SERVICE

routers = [access_router(service=SERVICE, export=store.export_profile)]
