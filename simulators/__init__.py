"""Simulated machines with a ground-truth ledger, served over OPC UA."""
