//! Where this process sits in a distributed launch, read from the environment the way
//! `torch.distributed`'s `env://` rendezvous reads it: torchrun's (and a hand launch's)
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, or Slurm's
//! `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` with `MASTER_ADDR`/`MASTER_PORT` inside an
//! `srun` step (`SLURM_STEP_NUM_TASKS` set: the batch script's own shell is not a launch).

use crate::error::{Result, TrainError};

/// Who launched the process, and so which variables it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `torchrun`, or `RANK`/`WORLD_SIZE` set by hand.
    Torchrun,
    /// `srun` (Slurm's task variables).
    Slurm,
}

/// This process's place in a launch of `world_size` processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this machine (the CUDA device `auto` picks).
    pub local_rank: usize,
    /// Host of the rendezvous store (rank 0's machine).
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Where the values came from.
    pub launcher: Launcher,
}

fn env_error(variable: &'static str, reason: impl Into<String>) -> TrainError {
    TrainError::InvalidConfig { field: variable, reason: reason.into() }
}

fn number(get: &impl Fn(&str) -> Option<String>, variable: &'static str) -> Result<Option<usize>> {
    get(variable)
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| {
                env_error(variable, format!("expected a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

impl Launch {
    /// The launch this process is part of, from its environment; `None` when it was not
    /// launched as one of several processes (no variables, or a world of one).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`Launch::from_env`] over the variables `get` returns. torchrun's variables win
    /// over Slurm's (torchrun inside an allocation sets both); errors name the variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (rank, world_size, local_rank, launcher) =
            if let Some(world) = number(&get, "WORLD_SIZE")? {
                let rank = number(&get, "RANK")?
                    .ok_or_else(|| env_error("RANK", "WORLD_SIZE is set but RANK is not"))?;
                // a one-machine hand launch may leave LOCAL_RANK out: then it is the rank
                let local = number(&get, "LOCAL_RANK")?.unwrap_or(rank);
                (rank, world, local, Launcher::Torchrun)
            } else if let Some(world) = number(&get, "SLURM_NTASKS")?
            // inside an srun step only: an sbatch script's own shell has SLURM_NTASKS too
            && get("SLURM_STEP_NUM_TASKS").is_some()
            {
                let rank = number(&get, "SLURM_PROCID")?.ok_or_else(|| {
                    env_error("SLURM_PROCID", "SLURM_NTASKS is set but SLURM_PROCID is not")
                })?;
                let local = number(&get, "SLURM_LOCALID")?.unwrap_or(0);
                (rank, world, local, Launcher::Slurm)
            } else {
                return Ok(None);
            };
        if world_size == 0 {
            return Err(env_error("WORLD_SIZE", "must be at least 1"));
        }
        if rank >= world_size {
            let var = if launcher == Launcher::Slurm { "SLURM_PROCID" } else { "RANK" };
            return Err(env_error(
                var,
                format!("rank {rank} is not below the world size {world_size}"),
            ));
        }
        if world_size == 1 {
            return Ok(None);
        }
        let hint = match launcher {
            Launcher::Torchrun => "torchrun sets it; a hand launch must",
            Launcher::Slurm => {
                "under Slurm set it to the first node of the job, e.g. \
                 MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"
            }
        };
        let master_addr = get("MASTER_ADDR")
            .ok_or_else(|| env_error("MASTER_ADDR", format!("not set ({hint})")))?;
        let port = get("MASTER_PORT")
            .ok_or_else(|| env_error("MASTER_PORT", format!("not set ({hint})")))?;
        let master_port = port.trim().parse::<u16>().map_err(|_| {
            env_error("MASTER_PORT", format!("expected a port number, got {port:?}"))
        })?;
        Ok(Some(Self { rank, world_size, local_rank, master_addr, master_port, launcher }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        Launch::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn torchrun_and_slurm_variables() {
        let master = [("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];
        let t = launch(
            &[&master[..], &[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")]].concat(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((t.rank, t.world_size, t.local_rank, t.launcher), (3, 8, 1, Launcher::Torchrun));
        assert_eq!((t.master_addr.as_str(), t.master_port), ("10.0.0.1", 29500));
        let s = launch(
            &[
                &master[..],
                &[
                    ("SLURM_PROCID", "5"),
                    ("SLURM_NTASKS", "16"),
                    ("SLURM_LOCALID", "1"),
                    ("SLURM_STEP_NUM_TASKS", "16"),
                ],
            ]
            .concat(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((s.rank, s.world_size, s.local_rank, s.launcher), (5, 16, 1, Launcher::Slurm));
        // torchrun inside a Slurm allocation: torchrun's variables win
        let both = launch(
            &[
                &master[..],
                &[("RANK", "1"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")],
            ]
            .concat(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((both.rank, both.world_size), (1, 2));
    }

    #[test]
    fn single_processes_and_errors() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        let step = ("SLURM_STEP_NUM_TASKS", "2");
        assert_eq!(launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), step]).unwrap(), None);
        // an sbatch script's shell (no srun step) is one process, whatever SLURM_NTASKS says
        let shell = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ];
        assert_eq!(launch(&shell).unwrap(), None);
        let msg = |vars: &[(&str, &str)]| launch(vars).unwrap_err().to_string();
        assert!(msg(&[("WORLD_SIZE", "2")]).contains("RANK"));
        assert!(msg(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("not below the world size 2"));
        assert!(msg(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("\"x\""));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "2")]).contains("MASTER_ADDR"));
        let slurm =
            msg(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), step, ("MASTER_ADDR", "h")]);
        assert!(slurm.contains("MASTER_PORT"), "{slurm}");
        let slurm = msg(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), step]);
        assert!(slurm.contains("scontrol"), "{slurm}");
        assert!(
            msg(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "99999")
            ])
            .contains("port")
        );
    }
}
