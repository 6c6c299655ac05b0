"""The driver: live actors (session), offline and online stages, evaluation."""
