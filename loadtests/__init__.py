"""Load tests: locust users, their service-level objectives and the reliability drills."""
