"""Every write and every state transition of the FL domain lives in this package."""
