"""The campaign service: campaigns and journeys on segments, with holdouts."""
