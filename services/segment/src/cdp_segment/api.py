"""HTTP routes of the segment service."""

from __future__ import annotations

from cdp_common.privacy import access_router

from cdp_segment import store
from cdp_segment.consumer import SERVICE

routers = [access_router(service=SERVICE, export=store.export_profile)]
