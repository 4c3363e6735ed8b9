//! Ids of runs, attempts and pilots: numbers on the wire and in the store,
//! distinct types in the server so that one is never passed for another.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! ids {
    ($($(#[$m:meta])* $name:ident;)+) => {$(
        $(#[$m])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )+};
}

ids! {
    /// One execution of a flow.
    RunId;
    /// One attempt of one step of a run: what a pilot runs.
    AttemptId;
    /// One pilot, kept across its reconnects.
    PilotId;
}
