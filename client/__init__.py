"""The site side of a federation: local trainer, head store, site worker, ClientApp shim."""
