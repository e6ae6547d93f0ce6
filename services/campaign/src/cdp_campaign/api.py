"""HTTP routes of the campaign service."""

from __future__ import annotations

from cdp_common.privacy import access_router

from cdp_campaign import store
from cdp_campaign.consumer import SERVICE

routers = [access_router(service=SERVICE, export=store.export_profile)]
