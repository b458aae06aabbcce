# Makes the Hydra configs importable as `dynfield.conf` from an installed wheel.
