//! Tests of ILDG/NERSC reading and writing.
