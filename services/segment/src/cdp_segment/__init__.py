"""The segment service: segment definitions and real-time membership."""
