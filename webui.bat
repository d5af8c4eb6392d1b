@echo off
rem Start SD Studio on Windows. First run: make .\venv, install torch (TORCH_COMMAND) and
rem requirements.txt. Flags go to app.py (see README.md); set COMMANDLINE_ARGS=--listen --api works too.
setlocal
cd /d "%~dp0"

rem Optional per-install settings, including an AUTOMATIC1111 webui-user.bat copied over as it is:
rem only its "set" lines are run (PYTHON, VENV_DIR, COMMANDLINE_ARGS), not its "call webui.bat".
if exist webui-user.bat (
    for /f "usebackq tokens=* delims=" %%L in (`findstr /B /I /C:"set " webui-user.bat`) do %%L
)

if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set VENV_DIR=venv

if not exist "%VENV_DIR%\Scripts\python.exe" (
    echo Creating virtual environment in %VENV_DIR%
    %PYTHON% -m venv "%VENV_DIR%" || goto :failed
)
call "%VENV_DIR%\Scripts\activate.bat" || goto :failed
echo " %COMMANDLINE_ARGS% %* " | findstr /C:" --skip-install " /C:" --skip-prepare-environment " >nul
if errorlevel 1 (
    python scripts\prepare_env.py || goto :failed
)
python app.py %*
exit /b %errorlevel%

:failed
echo.
echo Setup failed; see the messages above.
exit /b 1
