//! Error kinds that decide the process's exit code. Everything else is an `anyhow::Error` whose
//! context chain carries the facts (file, node, parameter, shapes); `main` prints it on one line.
use std::fmt;

/// What went wrong, as far as a batch script needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A file, model, checkpoint or data set that cannot be used as given (exit 3).
    Input,
    /// NaN or Inf in a loss or gradient (exit 4).
    NonFinite,
    /// Writing results failed: disk full, permissions (exit 5).
    Output,
}

impl Fault {
    pub fn exit_code(self) -> i32 {
        match self {
            Fault::Input => 3,
            Fault::NonFinite => 4,
            Fault::Output => 5,
        }
    }
}

/// An error tagged with its [`Fault`]; find it in a chain with [`fault_of`].
#[derive(Debug)]
pub struct Tagged {
    pub fault: Fault,
    pub message: String,
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Tagged {}

/// An input error: the message should name the file and the problem.
pub fn input(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        fault: Fault::Input,
        message: message.into(),
    })
}

pub fn non_finite(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        fault: Fault::NonFinite,
        message: message.into(),
    })
}

pub fn output(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Tagged {
        fault: Fault::Output,
        message: message.into(),
    })
}

/// The first tagged fault in an error's chain, if any.
pub fn fault_of(err: &anyhow::Error) -> Option<Fault> {
    err.chain()
        .find_map(|e| e.downcast_ref::<Tagged>().map(|t| t.fault))
}
