"""Run the consent service: `python -m cdp_consent`."""

from cdp_consent.main import main

main()
