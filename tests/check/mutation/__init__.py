"""Mutation tests of the checker: planted server defects (:mod:`.catalogue`), the patches
that plant them (:mod:`.patches`) and the harness that runs the checker against each
(:mod:`.harness`). A defect is planted in the test process only, on a fresh hosted device
served by :class:`vfio_user_mig.check.served.ServedTarget`; the shipped server never
carries one."""
