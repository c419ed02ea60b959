"""Tests that cross both sides: host conversion feeding the robot runtime."""
