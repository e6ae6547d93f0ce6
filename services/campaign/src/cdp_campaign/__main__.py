"""Run the campaign service: `python -m cdp_campaign`."""

from cdp_campaign.main import main

if __name__ == "__main__":
    main()
