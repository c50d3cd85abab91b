"""Small shared helpers, one home per concern: `dtypes` (names -> torch dtypes), `padding`
(pad to a multiple), `seeding` (seeds derived from keys). Import the submodule you need; this
package imports nothing so that `import fewstep` stays light."""
