"""Protocol rules that need both the migration model and the wire vocabulary.

This layer sits above :mod:`vfio_user_mig.model` (the FSM, which imports nothing else of the
package) and :mod:`vfio_user_mig.wire` (the codecs, which may import the model's state enums)
and below the simulator, the checker and the proofs that apply the rules:

* :mod:`vfio_user_mig.protocol.gating` -- which commands a server executes in each migration
  state (PROTOCOL.md sections 2 and 4).
"""
