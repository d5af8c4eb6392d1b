@echo off
rem Start SD Studio on Windows. First run: make .\venv, install torch (TORCH_COMMAND) and
rem requirements.txt. Flags go to app.py (see README.md); set COMMANDLINE_ARGS=--listen --api works too.
setlocal
cd /d "%~dp0"

if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set VENV_DIR=venv

if not exist "%VENV_DIR%\Scripts\python.exe" (
    echo Creating virtual environment in %VENV_DIR%
    %PYTHON% -m venv "%VENV_DIR%" || goto :failed
)
call "%VENV_DIR%\Scripts\activate.bat" || goto :failed
python scripts\prepare_env.py || goto :failed
python app.py %*
exit /b %errorlevel%

:failed
echo.
echo Setup failed; see the messages above.
exit /b 1
